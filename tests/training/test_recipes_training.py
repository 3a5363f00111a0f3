"""Training pieces against independent references: the loss, the trained-row projection, evaluation."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from qwenvl_data._constants import IGNORE_INDEX
from qwenvl_data.collate import Qwen2_5_VLCollator
from qwenvl_data.datasets import synthetic_vqa_dataset
from qwenvl_data.models import qwen2_5_vl_tiny
from qwenvl_data.training import NextTokenCrossEntropy, answer_accuracy, packaged_vocab_transform
from qwenvl_data.training._loss import output_loss, project_trained_rows, trained_rows


def _batch(num_samples=4):
    transform = packaged_vocab_transform(max_pixels=56 * 56)
    dataset = synthetic_vqa_dataset(transform, num_samples=num_samples, seed=5, image_size=[56, 84])
    return dataset, Qwen2_5_VLCollator()([dataset[i] for i in range(num_samples)])


def test_trained_row_logits_equal_the_full_logits_at_those_rows():
    torch.manual_seed(0)
    model = qwen2_5_vl_tiny().eval()
    _, batch = _batch()
    rows, targets = trained_rows(batch["labels"])
    with torch.no_grad():
        full = model(**batch)
        with project_trained_rows(model, rows):
            selected = model(**batch)
        again = model(**batch)  # the hook is gone after the block
    torch.testing.assert_close(selected, full[rows], rtol=1e-5, atol=1e-5)
    assert again.shape == full.shape
    assert targets.tolist() == [batch["labels"][b, i + 1].item() for b, i in rows.nonzero().tolist()]


def test_summed_loss_equals_torch_cross_entropy_over_shifted_labels():
    torch.manual_seed(0)
    hidden = torch.randn(3, 9, 16)
    output = torch.nn.Linear(16, 50, bias=False)
    labels = torch.randint(0, 50, (3, 9))
    labels[:, :4] = IGNORE_INDEX
    labels[1, 6] = IGNORE_INDEX
    logits = output(hidden)
    reference = F.cross_entropy(logits[:, :-1].reshape(-1, 50), labels[:, 1:].reshape(-1), reduction="sum")
    rows, targets = trained_rows(labels)
    loss = NextTokenCrossEntropy(chunk_size=4)(hidden[rows], output, targets)
    torch.testing.assert_close(loss, reference)
    assert targets.numel() == (labels[:, 1:] != IGNORE_INDEX).sum()


def _output_layers():
    """Each kind of output projection the builders make: plain, tied to the embedding, LoRA-adapted."""
    from torchtune.modules import TiedLinear
    from torchtune.modules.peft import LoRALinear

    plain = torch.nn.Linear(24, 300, bias=False)
    tied = TiedLinear(torch.nn.Embedding(300, 24))
    adapted = LoRALinear(24, 300, rank=4, alpha=8)
    torch.nn.init.normal_(adapted.lora_b.weight)  # a trained (non-zero) adapter
    return {"plain": plain, "tied": tied, "lora": adapted}


def _parameters(output):
    return list(output.tied_module.parameters() if hasattr(output, "tied_module") else output.parameters())


def _gradient_term_sums(output, hidden, targets):
    """For each gradient element, the float64 sum of |terms| that float32 accumulates into it.

    Every gradient here is a sum of products along the graph (d/d hidden = sum over the vocabulary of
    (softmax - onehot) x weight, d/d weight = sum over the rows of (softmax - onehot) x hidden, LoRA's
    factors likewise); the same graph with every factor replaced by its absolute value yields, by the
    same chain rule, the sum of the absolute values of those terms: the scale of float32 rounding errors
    in that element, which cancellation can make much larger than the element itself.
    """
    absolute = copy.deepcopy(output)
    modules = [absolute.tied_module] if hasattr(absolute, "tied_module") else [absolute]
    with torch.no_grad():
        for module in modules:
            module.double()
        for param in _parameters(absolute):
            param.abs_()
        reference = copy.deepcopy(output)
        for module in [reference.tied_module] if hasattr(reference, "tied_module") else [reference]:
            module.double()
        logits = reference(hidden.detach().double())
        softmax_minus_onehot = (logits.softmax(-1) - F.one_hot(targets, logits.shape[-1])).abs()
    magnitude = hidden.detach().double().abs().requires_grad_()
    weighted = (softmax_minus_onehot * absolute(magnitude)).sum()
    return torch.autograd.grad(weighted, [magnitude, *_parameters(absolute)]), logits.abs().max().item()


@pytest.mark.parametrize("kind", ["plain", "tied", "lora"])
@pytest.mark.parametrize("chunk_size", [1, 7, 1024])
def test_chunked_loss_and_gradients_equal_the_unchunked_ones(kind, chunk_size):
    """Loss, d/d hidden and d/d weights equal full-logits cross-entropy within float32 rounding bounds."""
    torch.manual_seed(0)
    output = _output_layers()[kind]
    params = _parameters(output)
    hidden = torch.randn(23, 24, requires_grad=True)
    targets = torch.randint(0, 300, (23,))

    reference = F.cross_entropy(output(hidden).float(), targets, reduction="sum")
    expected_grads = torch.autograd.grad(reference, [hidden, *params])
    loss = NextTokenCrossEntropy(chunk_size=chunk_size)(hidden, output, targets)
    grads = torch.autograd.grad(loss, [hidden, *params])

    torch.testing.assert_close(loss, reference, rtol=1e-5, atol=0)
    # Two float32 computations that sum the same terms in different orders (chunks, BLAS kernels, threads):
    # each is within K * eps * (sum of |terms|) of the exact value for a sum of K terms, whatever the order
    # (the worst-case bound, so no CPU's kernels can exceed it), hence apart by at most twice that. K: the
    # longest chain of float32 sums feeding an element (vocab 300 over d/d hidden, 23 rows over d/d weight,
    # 24 dims into each logit, 300 logits into each logsumexp); each logit's absolute error, up to its
    # 24 * eps * |logit| bound, enters softmax as a relative error of that size, hence the dims x max |logit|.
    sums, max_logit = _gradient_term_sums(output, hidden, targets)
    eps = torch.finfo(torch.float32).eps
    longest_sum = max(hidden.shape[0], 300) + hidden.shape[1] * max(max_logit, 1.0)
    for grad, expected, term_sum in zip(grads, expected_grads, sums, strict=True):
        bound = (2 * longest_sum * eps * term_sum).float()
        excess = (grad - expected).abs() - bound
        worst = excess.argmax()
        assert excess.max() <= 0, f"{(grad - expected).abs().max():.3g} apart; bound there {bound.flatten()[worst]:.3g}"


def test_chunked_loss_without_gradients_and_with_no_trained_rows():
    output = torch.nn.Linear(8, 20, bias=False)
    with torch.no_grad():
        loss = NextTokenCrossEntropy(chunk_size=3)(torch.randn(5, 8), output, torch.randint(0, 20, (5,)))
    assert loss.dtype == torch.float32 and loss.item() > 0 and loss.grad_fn is None
    empty = NextTokenCrossEntropy()(torch.randn(0, 8, requires_grad=True), output, torch.zeros(0, dtype=torch.long))
    empty.backward()  # a micro-batch without trained tokens contributes 0 and zero gradients
    assert empty.item() == 0 and output.weight.grad.abs().max() == 0


def test_model_forward_under_output_loss_returns_the_loss_of_its_logits():
    """The recipe's path (loss inside the forward) equals cross-entropy on the model's own logits."""
    torch.manual_seed(0)
    model = qwen2_5_vl_tiny()
    _, batch = _batch()
    rows, targets = trained_rows(batch["labels"])
    reference = F.cross_entropy(model(**batch)[rows], targets, reduction="sum")
    with output_loss(model, rows, targets, NextTokenCrossEntropy(chunk_size=5)):
        loss = model(**batch)
    torch.testing.assert_close(loss, reference, rtol=1e-5, atol=0)
    loss.backward()
    chunked = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    reference.backward()
    for name, param in model.named_parameters():
        if param.grad is not None:
            torch.testing.assert_close(chunked[name], param.grad, rtol=1e-4, atol=1e-6, msg=name)
    assert model(**batch).shape[-1] == 151936  # logits again once the block is left


def test_answer_accuracy_counts_a_sample_right_only_when_every_answer_token_is_predicted():
    """A model that copies the reference answer is always right; corrupting one sample's answer makes it wrong."""
    dataset, _ = _batch(num_samples=6)

    class Oracle(torch.nn.Module):
        """Logits that put all mass on the next reference token, except for sample `wrong`."""

        def __init__(self, wrong):
            super().__init__()
            self.decoder = torch.nn.Module()
            self.decoder.norm = torch.nn.Identity()
            self.wrong = wrong

        def forward(self, tokens, labels, **_):
            target = torch.roll(labels, -1, dims=1).clamp(min=0)
            if self.wrong is not None:
                target[self.wrong] += 1
            return self.decoder.norm(F.one_hot(target, 151936).float())

    kwargs = dict(batch_size=4, device=torch.device("cpu"), dtype=torch.float32)
    chance = sum(dataset[i]["chance"] for i in range(6)) / 6  # the accuracy of guessing, reported beside
    # Logits 1 on the reference token, 0 on the other 151935: cross-entropy log(e + 151935) - 1 per token.
    oracle_loss = math.log(math.e + 151935) - 1
    # float32 sums the 151,936 softmax terms (all positive): any order is within (K - 1) * eps of the exact sum,
    # relatively, and the log turns that into an absolute error of the loss (AVX2 kernels sum 8 lanes of 19k
    # terms each: 1.8e-4 off here, far more than eps * sqrt(K) would say; AVX-512 sums 16 lanes).
    summation_bound = (151936 - 1) * torch.finfo(torch.float32).eps
    assert answer_accuracy(Oracle(None), dataset, Qwen2_5_VLCollator(), **kwargs) == {
        "accuracy": 1.0, "correct": 6, "total": 6, "chance": pytest.approx(chance),
        "loss": pytest.approx(oracle_loss, abs=summation_bound),
    }
    result = answer_accuracy(Oracle(wrong=1), dataset, Qwen2_5_VLCollator(), **kwargs)
    assert (result["correct"], result["total"]) == (4, 6)  # sample 1 of each of the two batches


def test_chunked_loss_backward_twice_is_refused_not_silently_wrong():
    """The backward hands its gradients over (scaled in place); a second backward must not reuse them."""
    output = torch.nn.Linear(8, 20, bias=False)
    hidden = torch.randn(4, 8, requires_grad=True)
    loss = NextTokenCrossEntropy()(hidden, output, torch.randint(0, 20, (4,)))
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="retain_graph is not supported"):
        loss.backward()
