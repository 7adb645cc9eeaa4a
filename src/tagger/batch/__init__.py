"""Batch scoring of ticket parquet files (``python predict.py``): in process or on Ray Data."""
