"""The message bus: ZeroMQ endpoints under the run dir, msgpack control envelopes, the event loop."""
