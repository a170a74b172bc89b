"""Conversations rendered with the GGUF's own chat template, so every turn is a prefix of the next.

The decode loop reuses the longest common prefix on both sides (the SLM's KV
cache and the cloud session), so a new turn costs only its new tokens.
"""

from __future__ import annotations

from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from citer_edge.errors import CiterEdgeError
from citer_edge.slm import LocalModel


class Conversation:
    """The messages of one chat and their token form for the SLM."""

    def __init__(self, slm: LocalModel, system: str | None = None) -> None:
        template = slm.chat_template
        if not template:
            raise CiterEdgeError(f"{slm.path.name} has no chat template; use `citer-edge generate --raw` instead")
        self._slm = slm
        self._formatter = Jinja2ChatFormatter(
            template=template,
            eos_token=_special_text(slm, slm.metadata.get("tokenizer.ggml.eos_token_id")),
            bos_token=_special_text(slm, slm.metadata.get("tokenizer.ggml.bos_token_id")),
            add_generation_prompt=True,
        )
        self.messages: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []

    def add_user(self, text: str) -> None:
        self.messages.append({"role": "user", "content": text})

    def add_assistant(self, text: str) -> None:
        self.messages.append({"role": "assistant", "content": text})

    def fit(self, max_prompt_tokens: int) -> int:
        """Drop the oldest messages (the system message stays) until the prompt fits; return how many went.

        Raises CiterEdgeError when even the latest message alone does not fit.
        """
        dropped = 0
        first = 1 if self.messages and self.messages[0]["role"] == "system" else 0
        while len(self.prompt_tokens()) > max_prompt_tokens:
            if len(self.messages) - first <= 1:
                raise CiterEdgeError(
                    f"the message is too long for the SLM's window ({max_prompt_tokens} tokens of prompt at most)"
                )
            del self.messages[first]
            dropped += 1
        return dropped

    def prompt_text(self) -> str:
        return self._formatter(messages=self.messages).prompt  # type: ignore[arg-type]

    def prompt_tokens(self) -> list[int]:
        """The whole conversation so far, ending with the assistant's generation prompt."""
        return self._slm.tokenize(self.prompt_text(), add_bos=False)


def _special_text(slm: LocalModel, token_id: str | None) -> str:
    if token_id is None:
        return ""
    return slm.token_text(int(token_id))
