"""The chat rendering every stage shares: system prompt, user turn, image placeholders."""

from __future__ import annotations

# The reference's instruction (method-reference §0); the eval chat template injects the same text.
SYSTEM_PROMPT = (
    "You are a helpful scientific assistant. Answer the user's question based on the image provided. "
    "Your output must strictly follow this XML format:\n"
    "<caption>\n- bullet list describing the image\n</caption>\n"
    "<think>\nstep-by-step reasoning\n</think>\n"
    "<answer>\nfinal answer only\n</answer>"
)
IMAGE_PLACEHOLDER = "<image>"


def prompt_messages(question: str) -> list[dict]:
    """The verl-style prompt column: system + `<image>\\n{question}\\n` (method-reference §4.4)."""
    question = question.replace(IMAGE_PLACEHOLDER, "").strip()
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": f"{IMAGE_PLACEHOLDER}\n{question}\n"},
    ]


def to_chat(messages: list[dict]) -> list[dict]:
    """Turn `<image>` placeholders in string contents into image content items for chat templates."""
    chat = []
    for message in messages:
        content = message["content"]
        if isinstance(content, str) and IMAGE_PLACEHOLDER in content:
            items = []
            for i, text in enumerate(content.split(IMAGE_PLACEHOLDER)):
                if i:
                    items.append({"type": "image"})
                if text:
                    items.append({"type": "text", "text": text})
            content = items
        chat.append({"role": message["role"], "content": content})
    return chat
