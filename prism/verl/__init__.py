"""Our extensions of verl 0.9.1, reached through its own extension points: nothing here patches verl."""
