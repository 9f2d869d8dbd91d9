"""Structured reports: the TID 1500 measurement report with its findings and radiomics."""
