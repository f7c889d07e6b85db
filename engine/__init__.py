"""Sans-I/O protocol engines: state machines fed bytes and a clock, returning bytes and events."""
