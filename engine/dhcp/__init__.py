"""The DHCPv4 server engine (sans-I/O): lease table, allocation and the RFC 2131 exchanges."""
from .server import (DhcpConfig, DhcpServer, Lease, LeaseDeclined, LeaseExpired, LeaseGranted, LeaseReleased,
                     Nak, Offered, Reply, sanitize_hostname)

__all__ = ["DhcpConfig", "DhcpServer", "Lease", "LeaseDeclined", "LeaseExpired", "LeaseGranted", "LeaseReleased",
           "Nak", "Offered", "Reply", "sanitize_hostname"]
