"""DNS engine (sans-I/O, dnslib wire format): the local zone, the answer cache and the
upstream forwarding state machine."""
