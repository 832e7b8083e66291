"""run_lottery's ticket pool, and the odds' sampler, draw exactly what Lottery.pick over the remaining set draws."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from planner.lottery import Cut, Lottery, RunFloor, Ticket, _Draw, run_lottery, seed_for
from planner.sampling import Sampler

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def reference(tickets: list[Ticket], floors: list[RunFloor], deficit: int, lottery: Lottery) -> list[Cut]:
    """The loop as it was before the pool: re-sort the set on every draw (``Lottery.pick``)."""
    state = _Draw(set(tickets), {f.run: f for f in floors})
    cuts: list[Cut] = []
    while deficit > 0 and state.tickets:
        cut = state.cut(lottery.pick(state.tickets))
        cuts.append(cut)
        deficit -= cut.gpus
    return cuts


@st.composite
def draws(draw: st.DrawFn) -> tuple[list[Ticket], list[RunFloor], int, str]:
    tickets: list[Ticket] = []
    floors: list[RunFloor] = []
    for r in range(draw(st.integers(1, 12))):
        owner = draw(st.sampled_from(("org:a", "org:b", "org:c", "org:d")))
        sizes = draw(st.lists(st.sampled_from((1, 2, 4, 8)), min_size=1, max_size=4))
        tickets += [Ticket(owner, f"ns/r{r}", g, n) for g, n in enumerate(sizes)]
        width = sum(sizes)
        floors.append(RunFloor(f"ns/r{r}", width, draw(st.integers(1, width))))
    return tickets, floors, draw(st.integers(1, 80)), draw(st.sampled_from(("00ff", "abcd", "1234")))


@settings(max_examples=200, deadline=None)
@given(draws())
def test_pool_draws_match_the_reference(case: tuple[list[Ticket], list[RunFloor], int, str]) -> None:
    tickets, floors, deficit, seed = case
    fast, slow = Lottery(seed * 8), Lottery(seed * 8)
    assert run_lottery(tickets, floors, deficit, fast) == reference(tickets, floors, deficit, slow)
    assert fast.counter == slow.counter > 0


@settings(max_examples=200, deadline=None)
@given(draws(), st.integers(0, 3000))
def test_a_sample_draws_what_run_lottery_draws(
    case: tuple[list[Ticket], list[RunFloor], int, str], sample: int
) -> None:
    """``planner.sampling`` (the odds' samples) ends the same runs and cuts the same GPUs as ``run_lottery``."""
    tickets, floors, deficit, _ = case
    sampler = Sampler(tickets, floors)
    cuts = run_lottery(tickets, floors, deficit, Lottery(seed_for(f"{sampler.base}#{sample}", EPOCH)))
    outcome = sampler.run(sample, deficit)
    assert outcome.ended == tuple(c.ticket.run for c in cuts if c.run_ended)
    assert outcome.gpus == sum(c.gpus for c in cuts)
    assert outcome.gpus > 0
