"""What GetJobResult answers: a SUCCEEDED job's result document (from its row, or from the
object store when it was too large for the row) and its artifacts, each with a download
link that expires after `CONVEYOR_ARTIFACT_URL_SECONDS`.

Links are made for the job's owner only (another owner's job is NOT_FOUND before any link
is made, as everywhere); whoever holds a link can download until it expires, as with any
presigned URL, so clients should treat links as secrets and not log them.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from conveyor.api.jobs import JobOperations
from conveyor.db.artifacts import ArtifactStore
from conveyor.errors import Unavailable
from conveyor.jobs.artifacts import Artifact
from conveyor.jobs.model import Job, now_ms
from conveyor.objects import ObjectNotFound, ObjectStore
from conveyor.server.auth import Principal
from conveyor.v1 import job_pb2


@dataclass(frozen=True, slots=True)
class ArtifactLink:
    artifact: Artifact
    url: str
    expire_time: int

    def to_proto(self) -> job_pb2.Artifact:
        a = self.artifact
        msg = job_pb2.Artifact(
            name=a.name, size=a.size, content_type=a.content_type, sha256=a.sha256, url=self.url
        )
        msg.create_time.FromMilliseconds(a.create_time)
        msg.url_expire_time.FromMilliseconds(self.expire_time)
        return msg


@dataclass(frozen=True, slots=True)
class JobResult:
    job: Job
    document: dict[str, Any] | None
    artifacts: list[ArtifactLink] = field(default_factory=list)


class Results:
    def __init__(
        self,
        ops: JobOperations,
        artifacts: ArtifactStore,
        objects: ObjectStore,
        *,
        link_seconds: int,
    ) -> None:
        self.ops = ops
        self.artifacts = artifacts
        self.objects = objects
        self.link_seconds = link_seconds

    async def get(self, principal: Principal, job_id: str) -> JobResult:
        job, document, ref = await self.ops.result(principal, job_id)
        if document is None and ref:
            document = await self._stored(ref)
        made = await self.artifacts.of_job(job.id)
        links = await asyncio.to_thread(self._links, made) if made else []
        return JobResult(job, document, links)

    async def _stored(self, key: str) -> dict[str, Any]:
        try:
            data = await asyncio.to_thread(self.objects.read, key)
        except ObjectNotFound:
            raise Unavailable("the job's result is missing from the object store") from None
        except Exception as exc:
            raise Unavailable(f"the object store cannot be reached: {exc}") from exc
        document: dict[str, Any] = json.loads(data)
        return document

    def _links(self, made: list[Artifact]) -> list[ArtifactLink]:
        """Signing is local (no round trip) for both stores."""
        expires = timedelta(seconds=self.link_seconds)
        until = now_ms() + self.link_seconds * 1000
        return [
            ArtifactLink(
                a,
                self.objects.url(
                    a.key, expires=expires, filename=a.name, content_type=a.content_type
                ),
                until,
            )
            for a in made
        ]
