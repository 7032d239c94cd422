"""The one DMP package: header values, CONTEXT records, and the writers of full and bitmap dumps."""
