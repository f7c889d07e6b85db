"""The flow engine's pure parts: guest packet parsing and reply building, address mapping and
allow/deny policy, flow tables with limits and idle timeouts, IPv4 fragments.

Nothing here touches a socket or a clock; ``services/flow.py`` is the I/O adapter.
"""
