"""Conversations: chat-template rendering and the crash-safe journal behind `citer-edge chat` and `history`."""
