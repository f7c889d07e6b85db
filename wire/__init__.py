"""Pure wire formats: parse and build protocol headers. No I/O, no clocks."""
