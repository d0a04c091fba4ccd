"""The one result record format shared by every evaluation (knn, linear, transfer)."""
