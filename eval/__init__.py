"""Batch evaluation: FID/KID (torch-fidelity), anomaly-detection AUROC, reports and sweeps."""
