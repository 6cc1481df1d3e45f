"""Nearest training example vs constrained decoding: which labels a fine-tuned classifier's own representation
gives, on a run that `loraforge train` already evaluated (issue 18: the few-shot accuracy target). The product
does this on the engine (`evaluation.classifier: nearest`, classify/label_index.py); this script recomputes it
independently with transformers (fp32, merged adapter) and adds the out-of-scope AUROCs.

Both answers come from the same adapter. Decoding: the run's `predictions.jsonl` (labels constrained, the
config's fallback label below its threshold). Nearest neighbour: the adapter's last hidden state at the
answer position (the vector its first label token is predicted from), for every training row and every
evaluated row; each evaluated row takes the label of the most similar training row (cosine). The fallback
label's own training rows are a class like any other there, and a row is also answered with it where it is
not at least the config's `fallback_margin` more similar to its nearest row than to the fallback label's, or
is less similar than `fallback_min_similarity` to it (the product's rule, classify/label_index.py
`Neighbour.or_fallback`). Also printed: other answers from the same states that a k-NN classifier could
give (each label's k most similar rows averaged, each label's mean state, a vote of all rows weighted by a
softmax of their cosines), with the same fallback rule on the nearest example; and how well each score
separates the fallback label's rows from the rest (AUROC: decoding's probability, the best cosine to a
training row of another label).

    python benchmarks/init_transfer.py --settings banking77oos-10 --eval-on validation \
        --validation-per-label 20 --workdir /tmp/it
    python benchmarks/label_neighbours.py /tmp/it/validation/banking77oos-10
"""

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from loraforge.config import load_config
from loraforge.config.tasks import fallback_or, fallback_rule
from loraforge.data.examples import ExampleBuilder
from loraforge.data.labels import load_labels
from loraforge.data.sources import read_records
from loraforge.hardware import describe
from loraforge.inference.hf import GenerationModel

BATCH = 32


@torch.inference_mode()
def answer_states(model, tokenizer, prompts: list[str]) -> torch.Tensor:
    """`[rows, hidden]`: what the LM head reads at each prompt's last token, L2-normalized."""
    out = []
    for start in range(0, len(prompts), BATCH):
        chunk = prompts[start : start + BATCH]
        encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in chunk]
        width = max(map(len, encoded))
        ids = torch.tensor([e + [0] * (width - len(e)) for e in encoded])  # right-padded: causal, unseen
        mask = torch.tensor([[1] * len(e) + [0] * (width - len(e)) for e in encoded])
        states = model.get_decoder()(input_ids=ids, attention_mask=mask).last_hidden_state
        last = torch.tensor([len(e) - 1 for e in encoded])
        out.append(states[torch.arange(len(encoded)), last].float())
    return F.normalize(torch.cat(out), dim=1)


def auroc(score: torch.Tensor, negative: torch.Tensor) -> float:
    """P(score of a random positive > score of a random negative), ties half."""
    pos, neg = score[~negative], score[negative]
    wins = (pos[:, None] > neg[None, :]).double().mean()
    return (wins + 0.5 * (pos[:, None] == neg[None, :]).double().mean()).item()


def scores(answers: list[str], references: list[str], fallback: str | None) -> str:
    hits = torch.tensor([a == r for a, r in zip(answers, references, strict=True)], dtype=torch.float)
    line = f"accuracy {hits.mean():.1%}"
    if fallback is not None:
        out = torch.tensor([r == fallback for r in references])
        line += f" (in scope {hits[~out].mean():.1%}, {fallback} recall {hits[out].mean():.1%})"
    return line


def label_nearest(
    similarity: torch.Tensor, train_label: torch.Tensor, labels: int, k: int = 1
) -> torch.Tensor:
    """`[rows, labels]`: the mean cosine to each label's `k` most similar training rows (k=1: the nearest
    example's); -2 for a label without training rows."""
    out = torch.full((len(similarity), labels), -2.0)
    for j in train_label.unique().tolist():
        column = similarity[:, train_label == j]
        out[:, j] = column.topk(min(k, column.shape[1]), dim=1).values.mean(1)
    return out


def other_scores(similarity, states, train_states, train_label, labels: int) -> dict[str, torch.Tensor]:
    """`[rows, labels]` scores of the other classifiers the same states give (the module docstring)."""
    out = {
        f"each label's {k} nearest rows, mean": label_nearest(similarity, train_label, labels, k)
        for k in (2, 3)
    }
    means = torch.zeros(labels, train_states.shape[1]).index_add_(0, train_label, train_states)
    out["each label's mean state"] = states @ F.normalize(means, dim=1).T
    for temperature in (0.02, 0.05, 0.1):
        weights = torch.softmax(similarity / temperature, dim=1)
        vote = torch.zeros(len(states), labels).index_add_(1, train_label, weights)
        out[f"all rows' vote, softmax at {temperature}"] = vote
    return out


def print_others(
    others: dict[str, torch.Tensor],
    labels: list[str],
    references: list[str],
    fallback: str | None = None,
    sent: list[bool] | None = None,
) -> None:
    """Each other classifier's accuracy: a row the nearest example's fallback rule `sent` to the fallback
    label keeps it, every other row takes the label the score ranks first among the rest."""
    print("other answers from the same states" + (", the same fallback rows:" if fallback else ":"))
    sent = sent or [False] * len(references)
    for name, score in others.items():
        if fallback is not None:
            score[:, labels.index(fallback)] = -2.0
        answers = [fallback if s else labels[j] for s, j in zip(sent, score.argmax(1).tolist(), strict=True)]
        print(f"  {name}: ", scores(answers, references, fallback))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="init_transfer's folder: config.yaml and run/")
    args = parser.parse_args()
    if not (args.folder / "run" / "predictions.jsonl").is_file():
        parser.error(f"{args.folder} holds no finished run (run/predictions.jsonl): see the usage above")
    config = load_config(args.folder / "config.yaml")
    evaluation = config.evaluation
    labels = load_labels(evaluation.labels)
    fallback = evaluation.fallback_label
    generator = GenerationModel.load(config.base_model, args.folder / "run" / "adapter", precision="fp32")
    model = generator.model.merge_and_unload().eval()
    builder = ExampleBuilder(config.prompt, config.target, generator.tokenizer)
    train = [builder.build(r) for r in read_records(config.data.train)]
    decoded = read_records(args.folder / "run" / "predictions.jsonl")
    references = [d["reference"] for d in decoded]
    # The decoded label (`adapter_label` when the run answered with its label index, else the answer).
    labels_decoded = [d.get("adapter_label", d["adapter"]) for d in decoded]

    train_states = answer_states(model, generator.tokenizer, [e.prompt for e in train])
    states = answer_states(model, generator.tokenizer, [d["prompt"] for d in decoded])
    similarity = states @ train_states.T  # [rows, train]
    train_label = torch.tensor([labels.index(e.completion) for e in train])
    by_label = label_nearest(similarity, train_label, len(labels))
    alternatives = other_scores(similarity, states, train_states, train_label, len(labels))
    nearest = [labels[j] for j in by_label.argmax(1).tolist()]

    print(f"CPU: {describe()}")
    print(f"{len(train)} training rows, {len(decoded)} evaluated rows, {len(labels)} labels")
    if fallback is None:
        print("decoding:          ", scores(labels_decoded, references, None))
        print("nearest neighbour: ", scores(nearest, references, None))
        print_others(alternatives, labels, references)
        return
    probability = torch.tensor([d["adapter_probability"] for d in decoded])
    threshold = fallback_rule("decode", evaluation.fallback_threshold).threshold
    rule = fallback_rule("nearest", None, evaluation.fallback_margin, evaluation.fallback_min_similarity)
    print(
        f"fallback '{fallback}': decoding below probability {threshold}; nearest within margin"
        f" {rule.margin} or less similar than {rule.min_similarity}:"
    )
    decoded_or = [
        fallback_or(label, p, fallback, threshold)
        for label, p in zip(labels_decoded, probability.tolist(), strict=True)
    ]
    favoured = by_label.clone()
    favoured[:, labels.index(fallback)] += rule.margin  # Neighbour.or_fallback's rule
    unlike = by_label.max(1).values < rule.min_similarity
    nearest_or = [
        fallback if far else labels[j]
        for j, far in zip(favoured.argmax(1).tolist(), unlike.tolist(), strict=True)
    ]
    sent = [label == fallback for label in nearest_or]  # where the rule answers with the fallback label
    print("decoding:          ", scores(decoded_or, references, fallback))
    print("nearest neighbour: ", scores(nearest_or, references, fallback))
    print("no fallback: decoding", scores(labels_decoded, references, fallback))
    print("no fallback: nearest ", scores(nearest, references, fallback))
    print_others(alternatives, labels, references, fallback, sent)
    out = torch.tensor([r == fallback for r in references])
    others = by_label.clone()
    others[:, labels.index(fallback)] = -2.0
    print(
        f"AUROC, {fallback} vs the rest: decoding's probability {auroc(probability, out):.3f},"
        f" best cosine to another label's row {auroc(others.max(1).values, out):.3f}"
    )


if __name__ == "__main__":
    main()
