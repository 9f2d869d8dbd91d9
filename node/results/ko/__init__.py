"""Key Object Selection documents listing a result's other objects."""
