"""The FUSE filesystem: the virtual tree (pure) and its thin pyfuse3 adapter."""
