"""The mining report (GET /mcm/report, docs/report.md): source.py gathers (annotations, the ledger, the
ranking) and builds a document.py Report from stats.py's numbers and heldout.py's cross-validation;
figures.py draws its PNGs, page.py its HTML."""
