"""Step 2: IRNet — class boundaries, displacement field and random-walk propagation (paper 3.2)."""
