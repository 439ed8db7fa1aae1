"""Privacy mechanisms of a cell: secure aggregation and differential privacy."""
