"""Storage: the HDF5 schema, the background writer and the reader. Only this package knows the file layout."""
