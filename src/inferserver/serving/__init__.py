"""The process's HTTP serving: the uvicorn protocol and the open-file limit."""
