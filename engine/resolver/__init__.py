"""gangway's DNS resolver core, sans-I/O (dnslib wire format).

- ``message``: parse a client's bytes into a query, or the FORMERR/NOTIMP/REFUSED to send, or a
  drop reason; build error replies.
- ``zone``: the local data (host, gateway, aliases, guests, static and runtime records, PTR);
  answers NOERROR / NODATA / NXDOMAIN for names it owns, None for names to forward.
- ``cache``: answers by (name, type, class); TTLs counted down, negative answers cached by the
  SOA minimum (RFC 2308), LRU size bound.
- ``forwarder``: upstream choice (per-domain rules, longest suffix), id rewriting, answer
  matching by (id, server, question), failover after a per-try timeout, a total deadline,
  TC -> TCP retry. Returns actions; the caller does the I/O.
- ``truncate``: fit an answer into the client's UDP limit, setting TC.

Nothing here touches a socket, a thread or a clock: ``now`` is always passed in.
"""
