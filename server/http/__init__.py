"""The HTTP/JSON face: FastAPI on uvicorn, on the server's one event loop, over the core."""
