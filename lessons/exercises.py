"""The interactive exercises a lesson can embed, and what each accepts.

Plain Python, no Django: the content loader checks lessons against this table, and the lesson
page uses it to pick a template. An exercise with no template yet renders as a "coming soon"
box with its description, never as a broken widget.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Exercise:
    name: str
    title: str
    description: str
    options: tuple[str, ...] = ()
    # Template under templates/exercises/; None until the exercise is built.
    template: str | None = None


EXERCISES: dict[str, Exercise] = {
    exercise.name: exercise
    for exercise in [
        Exercise(
            "next-token",
            "Complete the sentence",
            "Click among the model's next-token candidates and their probabilities to build a "
            "sentence one token at a time, then see how likely the model found your choices.",
            ("prompt",),
            "exercises/_next_token.html",
        ),
        Exercise(
            "generate",
            "Generation playground",
            "Give the model a prompt, set temperature, top-k and top-p, and watch it write token by token.",
            ("prompt", "chat"),
            "exercises/_generate.html",
        ),
        Exercise(
            "inside-the-model",
            "Inside the model",
            "See a prompt's tokens, the attention weights of any layer and head as a heat map, "
            "and what the model would predict at each layer.",
            ("prompt",),
            "exercises/_inside_the_model.html",
        ),
        Exercise(
            "tokenize",
            "Tokenizer view",
            "Type any text and see how the course model splits it into tokens, with their ids and a count.",
            ("text",),
            "exercises/_tokenize.html",
        ),
        Exercise(
            "tokenizer-lab",
            "Train your own tokenizer",
            "Train a byte-pair-encoding tokenizer on Shakespeare, the King James Bible, this "
            "course or your own file, then step through its merges.",
            ("corpus",),
            template="exercises/_tokenizer_lab.html",
        ),
        Exercise(
            "lora-lab",
            "Fine-tune with LoRA",
            "Submit a LoRA fine-tuning job on the course model, watch the loss fall, and download your adapter.",
            ("dataset",),
            template="exercises/_lora_lab.html",
        ),
        Exercise(
            "adapter-compare",
            "Your adapter against the base model",
            "Run the same prompt on the base model and on your fine-tuned adapter, side by side.",
            ("prompt",),
            "exercises/_adapter_compare.html",
        ),
        Exercise(
            "quantization-lab",
            "Quantization lab",
            "Load the course model at 32, 8 and 4 bits and compare memory, speed and the next-token candidates.",
            ("prompt",),
            "exercises/_quantization_lab.html",
        ),
        Exercise(
            "api-keys",
            "Call the model over HTTP",
            "Create an API token and call the course model with curl or Python.",
            template="exercises/_api_keys.html",
        ),
    ]
}
