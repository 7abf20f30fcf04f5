"""The dashboard service: the web UI (`conveyor.dashboard`) served over HTTP by uvicorn."""
