"""Datasets: MVTec AD, BTAD, MTD, generic folders, and a procedural synthetic set."""
