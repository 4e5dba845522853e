"""``edgeshard.v1.Jobs``: submit sharded batch jobs, watch them, stream their results."""

from __future__ import annotations

import logging

from coordinator.api import convert
from coordinator.jobs.model import JobProgress
from coordinator.jobs.service import JobService
from coordinator.jobs.submission import Submission
from edgeshard.auth import Authenticator
from edgeshard.errors import ResourceExhaustedError
from edgeshard.limits import ConcurrencyLimit
from edgeshard.rpc import guarded
from protos import codec, fleet_pb2, fleet_pb2_grpc

log = logging.getLogger(__name__)

guard = guarded("coordinator", log)


class StreamsExhaustedError(ResourceExhaustedError):
    """A Jobs streaming method already has its most concurrent streams."""


class JobsServicer(fleet_pb2_grpc.JobsServicer):
    """Jobs RPCs over ``JobService`` (served by a grpc.aio server: Watch and FetchResults
    are coroutines that hold no thread). At most ``max_streams`` concurrent Submit streams
    (each holds a handler thread while it uploads) and ``max_followers`` concurrent
    streams of each of Watch and FetchResults; one more is refused with
    RESOURCE_EXHAUSTED. With an ``authenticator`` a job belongs to the token that
    submitted it (admins see all)."""

    def __init__(self, jobs: JobService, max_streams: int = 16,
                 authenticator: Authenticator | None = None, max_followers: int = 4096):
        self.jobs = jobs
        self.authenticator = authenticator
        self.streams = {"Submit": ConcurrencyLimit(max_streams, self._refusal("Submit")),
                        **{method: ConcurrencyLimit(max_followers, self._refusal(method))
                           for method in ("Watch", "FetchResults")}}

    @staticmethod
    def _refusal(method: str):
        setting = "max_streams" if method == "Submit" else "max_followers"
        return lambda limit: StreamsExhaustedError(
            f"{method}: {limit} streams are open already (the coordinator's {setting}); "
            "retry later")

    def _caller(self, context) -> tuple[str, str | None]:
        """``(owner, scope)`` of the call: the token's name for new jobs, and whose jobs it
        may touch (None: every job, for an admin or without authentication)."""
        if self.authenticator is None:
            return "", None
        principal = self.authenticator.principal(context.invocation_metadata())
        if principal is None:  # the interceptor lets no Jobs call through without one
            return "", None
        return principal.name, None if principal.is_admin else principal.name

    def _status(self, p: JobProgress) -> fleet_pb2.JobStatus:  # blocking: reads shares
        return convert.job_status(p, self.jobs.shares(p.job_id))

    @guard
    def Submit(self, request_iterator, context):
        with self.streams["Submit"]:
            return self._submit(request_iterator, *self._caller(context))

    def _submit(self, request_iterator, owner: str, scope: str | None) -> fleet_pb2.JobStatus:
        submission = Submission()
        for i, part in enumerate(request_iterator):
            kind = part.WhichOneof("part")
            if kind == "header":
                submission.add_header(i, convert.job_request(part.header))
            elif kind == "items":
                batch = part.items
                submission.add_items(i, list(batch.ids), codec.decode_array(
                    f"items[{i}]", batch.datatype, list(batch.shape), batch.data))
            else:
                submission.refuse_empty(i)
        return self._status(self.jobs.submit(submission, owner, scope))

    @guard
    def GetJob(self, request, context):
        return self._status(self.jobs.get(request.job_id, self._caller(context)[1]))

    @guard
    def ListJobs(self, request, context):
        jobs, next_token = self.jobs.list(self._caller(context)[1], request.page_size,
                                          request.page_token)
        return fleet_pb2.ListJobsResponse(jobs=[self._status(p) for p in jobs],
                                          next_page_token=next_token)

    @guard
    def Cancel(self, request, context):
        return self._status(self.jobs.cancel(request.job_id, self._caller(context)[1]))

    @guard
    async def Watch(self, request, context):
        with self.streams["Watch"]:
            async for p, shares in self.jobs.watch(request.job_id, request.interval_s,
                                                   self._caller(context)[1]):
                yield convert.job_status(p, shares)

    @guard
    async def FetchResults(self, request, context):
        with self.streams["FetchResults"]:
            async for row, provisional in self.jobs.results(
                    request.job_id, request.after_seq, request.follow,
                    request.include_pending, self._caller(context)[1]):
                yield convert.result_record(row, provisional)
