"""Untrusted volume bytes: sniffing, header verification, and bounded conversion.

Every volume a client or a model container supplies is parsed here by the server's own header code
(nrrd.py, nifti.py) before any library opens it, and converted only in a limited child process (convert.py
starts worker.py).
"""
