"""gangway: user-mode networking for virtual machines and network namespaces."""
