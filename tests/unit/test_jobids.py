"""Job ids have one format, checked before any Redis access."""

from __future__ import annotations

import pytest

from facefusion_tasks.errors import InputError
from facefusion_tasks.jobids import check_job_id, new_job_id
from facefusion_tasks.reasons import Reason


def test_a_new_id_passes_its_own_check() -> None:
    ids = {new_job_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(check_job_id(i) == i for i in ids)


@pytest.mark.parametrize(
    "text",
    [
        "0123456789abcdef:chunk:0",  # a chunk record shown as if it were a job
        "0123456789abcdef:done",  # a set: "internal error: ResponseError" before
        "0123456789abcdef:chunk:2",  # cancel printed "cancelled" and the job ran on
        "0123456789ABCDEF",
        "0123456789abcde",
        "0123456789abcdef0",
        " 0123456789abcdef",
        "0123456789abcdef\n",
        "celery",
        "*",
        "",
        "x" * 10_000,
    ],
)
def test_anything_else_is_no_such_job(text: str) -> None:
    with pytest.raises(InputError, match="no such job") as caught:
        check_job_id(text)
    assert caught.value.reason == Reason.UNKNOWN_JOB
    assert Reason.UNKNOWN_JOB.user_input  # exit 2
    assert len(str(caught.value)) < 80  # one short line, whatever was typed
