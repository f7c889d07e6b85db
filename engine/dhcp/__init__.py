"""The DHCPv4 server engine (sans-I/O): lease table, allocation and the RFC 2131 exchanges."""
