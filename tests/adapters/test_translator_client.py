"""A consumer node's client of the pseudonym translator, when the translator is away."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from adapters.translator_client import HttpSubjectSealer, TranslatorUnavailable
from exchange.central_config import RegistryDocument, TranslatorEntry, VerifiedRegistry
from exchange.errors import ConfigurationError, UnavailableError
from exchange.identifiers import ClientId, ServiceId
from exchange.ports import SubjectTokenRequest
from exchange.signing import MemberSigner, generate_private_key
from tests.integration.processes import free_port

TAX = ClientId.parse("JP/GOV/132098/municipal-tax")
ADDRESS = ServiceId.parse("JP/GOV/132098/resident-registry/address/v1")
ASK = SubjectTokenRequest(TAX, "tax-1", ADDRESS, citizen=False, message_id="m-1")


def _registry(translator: TranslatorEntry | None) -> VerifiedRegistry:
    now = datetime.now(UTC)
    return VerifiedRegistry(
        RegistryDocument(
            instance="JP",
            serial=1,
            issued_at=now,
            expires_at=now + timedelta(minutes=10),
            ca_certificate="",
            translator=translator,
        )
    )


def test_an_unreachable_translator_is_a_503_to_retry_not_a_refusal() -> None:
    sealer = HttpSubjectSealer({TAX: MemberSigner(generate_private_key())}, timeout_s=1)
    sealer.on_registry(
        _registry(TranslatorEntry(url=f"http://127.0.0.1:{free_port()}", public_key=""))
    )
    with pytest.raises(TranslatorUnavailable) as caught:
        asyncio.run(sealer.seal_subject(ASK))
    assert isinstance(caught.value, UnavailableError)
    assert caught.value.status == 503
    asyncio.run(sealer.aclose())


def test_no_translator_in_the_registry_fails_closed() -> None:
    sealer = HttpSubjectSealer({TAX: MemberSigner(generate_private_key())}, timeout_s=1)
    sealer.on_registry(_registry(None))
    with pytest.raises(ConfigurationError):
        asyncio.run(sealer.seal_subject(ASK))
    asyncio.run(sealer.aclose())
