"""normviz's built-in plugins: each module is exactly what a third-party plugin looks like."""
