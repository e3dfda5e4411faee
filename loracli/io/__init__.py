"""Reading and writing files: loracli checkpoints and converters for foreign formats."""
