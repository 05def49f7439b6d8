"""Recording: forward/tensor/optimizer hooks and on-device statistics. No file I/O here."""
