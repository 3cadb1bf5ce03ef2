"""Calling the OpenAI Responses API."""
