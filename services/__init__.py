"""gangway's services: thin adapters (ZeroMQ, sockets, files) around the sans-I/O engines."""
