"""What runs before the first fork: options, listeners, fork+exec of a generation."""
