# METADATA
# title: unit tests of onceonly.exchange
# description: |
#   At least one test per rule, against the fixture registry in testdata/registry/data.json
#   (loaded at data.registry). Written for OPA:
#     opa test policies/rego/exchange.rego policies/rego/exchange_test.rego policies/rego/testdata
#   Run by tests/policies/test_rego_unit.py on the real OPA engine (opa-golib-python-bindings);
#   rego-cpp 1.5.2 (the embedded engine) cannot run them: it mishandles `with`. The same cases
#   also run as a decision table (tests/policies/decisions.json) through every engine.
#   Statutes are modelled on the Basic Resident Registration Act (住民基本台帳法, Act No. 81 of
#   1967) and the My Number Act (番号法, Act No. 27 of 2013); ids and item numbers are illustrative.
package onceonly.exchange_test

import data.onceonly.exchange

test_statutory_exchange_is_allowed_with_the_statute_fields if {
	d := exchange.decision
		with input.client as "JP/GOV/132098/tax"
		with input.service as "JP/GOV/132098/resident-registry/address"
		with input.purpose as "tax-assessment"
		with input.now as "2026-11-23T11:40:00+00:00"
	d.allow == true
	d.basis == "statute:jp-act-1967-81/art30-9"
	d.fields == ["address", "birth_date", "name"]
	d.reasons == []
}

test_decision_has_exactly_the_four_documented_keys if {
	allowed := exchange.decision
		with input.client as "JP/GOV/132098/tax"
		with input.service as "JP/GOV/132098/resident-registry/address"
		with input.purpose as "tax-assessment"
		with input.now as "2026-11-23T11:40:00+00:00"
	refused := exchange.decision
		with input.client as "JP/GOV/132098/tax"
		with input.service as "JP/GOV/132098/resident-registry/address"
		with input.purpose as "marketing"
		with input.now as "2026-11-23T11:40:00+00:00"
	object.keys(allowed) == {"allow", "basis", "fields", "reasons"}
	object.keys(refused) == {"allow", "basis", "fields", "reasons"}
}

test_unknown_service_is_refused if {
	d := exchange.decision
		with input.client as "JP/GOV/132098/tax"
		with input.service as "JP/GOV/132098/resident-registry/unknown"
		with input.purpose as "tax-assessment"
		with input.now as "2026-11-23T11:40:00+00:00"
	d.allow == false
	d.fields == []
	d.basis == null
	d.reasons == ["unknown service: JP/GOV/132098/resident-registry/unknown"]
}

test_service_of_an_unknown_provider_is_refused if {
	d := exchange.decision
		with input.client as "JP/GOV/132098/tax"
		with input.service as "JP/GOV/999999/resident-registry/address"
		with input.purpose as "tax-assessment"
		with input.now as "2026-11-23T11:40:00+00:00"
	d.reasons == ["unknown service: JP/GOV/999999/resident-registry/address"]
}

test_client_without_access_right_is_refused_by_default if {
	d := exchange.decision
		with input.client as "JP/GOV/132098/library"
		with input.service as "JP/GOV/132098/resident-registry/address"
		with input.purpose as "tax-assessment"
		with input.now as "2026-11-23T11:40:00+00:00"
	d.allow == false
	"no access right: JP/GOV/132098/library may not call JP/GOV/132098/resident-registry/address" in d.reasons
}

test_access_right_not_yet_in_force_is_refused if {
	d := exchange.decision
		with input.client as "JP/GOV/132098/water-bureau"
		with input.service as "JP/GOV/132098/resident-registry/address"
		with input.purpose as "utility-move"
		with input.now as "2026-03-31T14:59:59+00:00"
		with input.consent as {"allow": true, "consent_id": "c-42", "fields": ["address"]}
	d.allow == false
	d.reasons == ["access right of JP/GOV/132098/water-bureau to JP/GOV/132098/resident-registry/address is not in force at 2026-03-31T14:59:59+00:00"]
}

test_access_right_starts_at_not_before_inclusive if {
	d := exchange.decision
		with input.client as "JP/GOV/132098/water-bureau"
		with input.service as "JP/GOV/132098/resident-registry/address"
		with input.purpose as "utility-move"
		with input.now as "2026-03-31T15:00:00+00:00"
		with input.consent as {"allow": true, "consent_id": "c-42", "fields": ["address"]}
	d.allow == true
	d.basis == "consent:c-42"
}

test_access_right_ends_before_not_after if {
	last := exchange.decision
		with input.client as "JP/GOV/132098/water-bureau"
		with input.service as "JP/GOV/132098/resident-registry/address"
		with input.purpose as "utility-move"
		with input.now as "2027-03-31T14:59:59.999999+00:00"
		with input.consent as {"allow": true, "consent_id": "c-42", "fields": ["address"]}
	ended := exchange.decision
		with input.client as "JP/GOV/132098/water-bureau"
		with input.service as "JP/GOV/132098/resident-registry/address"
		with input.purpose as "utility-move"
		with input.now as "2027-03-31T15:00:00+00:00"
		with input.consent as {"allow": true, "consent_id": "c-42", "fields": ["address"]}
	last.allow == true
	ended.allow == false
}

test_z_zone_designator_reads_as_utc if {
	inside := exchange.decision
		with input.client as "JP/GOV/132098/water-bureau"
		with input.service as "JP/GOV/132098/resident-registry/address"
		with input.purpose as "utility-move"
		with input.now as "2026-03-31T15:00:00Z"
		with input.consent as {"allow": true, "consent_id": "c-42", "fields": ["address"]}
	outside := exchange.decision
		with input.client as "JP/GOV/132098/water-bureau"
		with input.service as "JP/GOV/132098/resident-registry/address"
		with input.purpose as "utility-move"
		with input.now as "2026-03-31T14:59:59Z"
		with input.consent as {"allow": true, "consent_id": "c-42", "fields": ["address"]}
	inside.allow == true
	outside.allow == false
}

test_undeclared_purpose_is_refused_even_with_consent if {
	d := exchange.decision
		with input.client as "JP/GOV/132098/tax"
		with input.service as "JP/GOV/132098/resident-registry/address"
		with input.purpose as "marketing"
		with input.now as "2026-11-23T11:40:00+00:00"
		with input.consent as {"allow": true, "consent_id": "c-42", "fields": ["address"]}
	d.allow == false
	"purpose marketing is not declared by service JP/GOV/132098/resident-registry/address" in d.reasons
}

test_change_on_a_read_only_service_is_refused if {
	d := exchange.decision
		with input.client as "JP/GOV/132098/tax"
		with input.service as "JP/GOV/132098/resident-registry/address"
		with input.purpose as "tax-assessment"
		with input.now as "2026-11-23T11:40:00+00:00"
		with input.operation as "change"
	d.allow == false
	"operation change is not offered by service JP/GOV/132098/resident-registry/address" in d.reasons
}

test_change_is_allowed_by_a_statute_that_names_changes if {
	d := exchange.decision
		with input.client as "JP/GOV/132098/water-bureau"
		with input.service as "JP/GOV/132098/resident-registry/move-notice"
		with input.purpose as "address-change"
		with input.now as "2026-11-23T11:40:00+00:00"
		with input.operation as "change"
	d.allow == true
	d.basis == "statute:jp-act-1967-81/art9"
	d.fields == ["moved_on", "new_address"]
}

test_statute_for_changes_is_no_basis_for_reading if {
	d := exchange.decision
		with input.client as "JP/GOV/132098/water-bureau"
		with input.service as "JP/GOV/132098/resident-registry/move-notice"
		with input.purpose as "address-change"
		with input.now as "2026-11-23T11:40:00+00:00"
	d.allow == false
	startswith(d.reasons[0], "no legal basis")
}

test_operation_defaults_to_read if {
	d := exchange.decision
		with input.client as "JP/GOV/132098/water-bureau"
		with input.service as "JP/GOV/132098/resident-registry/move-notice"
		with input.purpose as "address-change"
		with input.now as "2026-11-23T11:40:00+00:00"
		with input.consent as {"allow": true, "consent_id": "c-42", "fields": ["new_address"]}
	d.allow == true
	d.basis == "consent:c-42"
}

test_statute_by_member_class_covers_every_public_body if {
	d := exchange.decision
		with input.client as "JP/GOV/131016/tax"
		with input.service as "JP/GOV/132098/resident-registry/address"
		with input.purpose as "tax-assessment"
		with input.now as "2026-11-23T11:40:00+00:00"
	d.allow == true
	d.basis == "statute:jp-act-1967-81/art30-9"
}

test_statute_by_member_class_does_not_cover_a_private_company if {
	d := exchange.decision
		with input.client as "JP/COM/1234567890123/billing"
		with input.service as "JP/GOV/132098/resident-registry/address"
		with input.purpose as "tax-assessment"
		with input.now as "2026-11-23T11:40:00+00:00"
	d.allow == false
	d.reasons == ["no legal basis: no statute in force covers JP/COM/1234567890123/billing for purpose tax-assessment, and no valid consent was given"]
}

test_statute_naming_clients_covers_only_them if {
	named := exchange.decision
		with input.client as "JP/GOV/132098/child-allowance"
		with input.service as "JP/GOV/132098/resident-registry/address"
		with input.purpose as "child-allowance"
		with input.now as "2026-11-23T11:40:00+00:00"
	other := exchange.decision
		with input.client as "JP/GOV/132098/tax"
		with input.service as "JP/GOV/132098/resident-registry/address"
		with input.purpose as "child-allowance"
		with input.now as "2026-11-23T11:40:00+00:00"
	named.basis == "statute:jp-act-2013-27/appended-table/item-74"
	named.fields == ["address", "birth_date", "household", "name"]
	other.allow == false
}

test_statute_no_longer_in_force_is_no_basis_and_says_so if {
	d := exchange.decision
		with input.client as "JP/GOV/132098/water-bureau"
		with input.service as "JP/GOV/132098/resident-registry/address"
		with input.purpose as "utility-move"
		with input.now as "2026-06-01T00:00:00+00:00"
	d.allow == false
	"statute jp-act-1967-81/old-art names this exchange but is not in force at 2026-06-01T00:00:00+00:00" in d.reasons
}

test_statute_by_client_member_applies_while_in_force if {
	d := exchange.decision
		with input.client as "JP/GOV/132098/tax"
		with input.service as "JP/GOV/132098/resident-registry/address"
		with input.purpose as "utility-move"
		with input.now as "2019-12-31T14:59:59+00:00"
	d.allow == false

	# The access right is the only refusal: the old statute, in force until 2020-01-01T00:00+09:00
	# (2019-12-31T15:00Z), is still a legal basis, so neither "no legal basis" nor "statute ... is
	# not in force" is among the reasons. (Checking only reasons[0] proved nothing: the sorted
	# "access right ..." reason always comes before "no legal basis ...".)
	d.reasons == ["access right of JP/GOV/132098/tax to JP/GOV/132098/resident-registry/address is not in force at 2019-12-31T14:59:59+00:00"]
}

test_first_applicable_statute_by_ordinance_is_the_basis if {
	d := exchange.decision
		with input.client as "JP/GOV/132098/child-allowance"
		with input.service as "JP/GOV/132098/resident-registry/address"
		with input.purpose as "tax-assessment"
		with input.now as "2026-11-23T11:40:00+00:00"
	d.allow == true
	d.basis == "statute:jp-act-1967-81/art30-9"
	d.fields == ["address", "birth_date", "name"]
}

test_consent_is_the_basis_when_no_statute_applies if {
	d := exchange.decision
		with input.client as "JP/COM/1234567890123/billing"
		with input.service as "JP/GOV/132098/resident-registry/address"
		with input.purpose as "utility-move"
		with input.now as "2026-11-23T11:40:00+00:00"
		with input.consent as {"allow": true, "consent_id": "c-42", "fields": ["address", "name"]}
	d.allow == true
	d.basis == "consent:c-42"
	d.fields == ["address", "name"]
}

test_refused_consent_is_no_basis_and_says_so if {
	d := exchange.decision
		with input.client as "JP/COM/1234567890123/billing"
		with input.service as "JP/GOV/132098/resident-registry/address"
		with input.purpose as "utility-move"
		with input.now as "2026-11-23T11:40:00+00:00"
		with input.consent as {"allow": false, "consent_id": "c-42", "fields": ["address"]}
	d.allow == false
	"consent c-42 does not cover this exchange" in d.reasons
}

test_consent_without_an_id_is_no_basis if {
	d := exchange.decision
		with input.client as "JP/COM/1234567890123/billing"
		with input.service as "JP/GOV/132098/resident-registry/address"
		with input.purpose as "utility-move"
		with input.now as "2026-11-23T11:40:00+00:00"
		with input.consent as {"allow": true, "fields": ["address"]}
	d.allow == false
}

test_statute_wins_over_consent if {
	d := exchange.decision
		with input.client as "JP/GOV/132098/tax"
		with input.service as "JP/GOV/132098/resident-registry/address"
		with input.purpose as "tax-assessment"
		with input.now as "2026-11-23T11:40:00+00:00"
		with input.consent as {"allow": true, "consent_id": "c-42", "fields": ["address_since"]}
	d.basis == "statute:jp-act-1967-81/art30-9"
	d.fields == ["address", "birth_date", "name"]
}

test_fields_are_requested_and_offered_and_allowed_by_the_basis if {
	d := exchange.decision
		with input.client as "JP/GOV/132098/tax"
		with input.service as "JP/GOV/132098/resident-registry/address"
		with input.purpose as "tax-assessment"
		with input.now as "2026-11-23T11:40:00+00:00"
		with input.requested_fields as ["address", "household", "shoe_size"]
	d.allow == true
	d.fields == ["address"]
}

test_consent_fields_the_service_does_not_offer_are_dropped if {
	d := exchange.decision
		with input.client as "JP/COM/1234567890123/billing"
		with input.service as "JP/GOV/132098/resident-registry/address"
		with input.purpose as "utility-move"
		with input.now as "2026-11-23T11:40:00+00:00"
		with input.consent as {"allow": true, "consent_id": "c-42", "fields": ["address", "bank_account"]}
	d.fields == ["address"]
}

test_nothing_allowed_to_give_is_a_refusal if {
	d := exchange.decision
		with input.client as "JP/GOV/132098/tax"
		with input.service as "JP/GOV/132098/resident-registry/address"
		with input.purpose as "tax-assessment"
		with input.now as "2026-11-23T11:40:00+00:00"
		with input.requested_fields as ["household"]
	d.allow == false
	d.fields == []
	d.reasons == ["data minimisation: none of the requested fields is allowed on this basis"]
}

test_empty_request_is_a_refusal if {
	d := exchange.decision
		with input.client as "JP/GOV/132098/tax"
		with input.service as "JP/GOV/132098/resident-registry/address"
		with input.purpose as "tax-assessment"
		with input.now as "2026-11-23T11:40:00+00:00"
		with input.requested_fields as []
	d.allow == false
}

test_empty_registry_refuses_everything if {
	d := exchange.decision
		with input.client as "JP/GOV/132098/tax"
		with input.service as "JP/GOV/132098/resident-registry/address"
		with input.purpose as "tax-assessment"
		with input.now as "2026-11-23T11:40:00+00:00"
		with data.registry as {"services": {}, "access_rights": {}, "statutes": {}}
	d.allow == false
	d.reasons == ["unknown service: JP/GOV/132098/resident-registry/address"]
}

test_several_failures_give_every_reason_sorted if {
	d := exchange.decision
		with input.client as "JP/GOV/132098/library"
		with input.service as "JP/GOV/132098/resident-registry/address"
		with input.purpose as "marketing"
		with input.now as "2026-11-23T11:40:00+00:00"
	d.allow == false
	count(d.reasons) == 3
	d.reasons == sort(d.reasons)
}

test_a_parent_acting_for_a_child_is_allowed if {
	d := exchange.decision
		with input.client as "JP/GOV/132098/tax"
		with input.service as "JP/GOV/132098/resident-registry/address"
		with input.purpose as "tax-assessment"
		with input.now as "2026-11-23T11:40:00+00:00"
		with input.represented_party as {"class": "PARENT", "code": "mdt-1"}
	d.allow == true
}

test_an_unknown_representation_kind_is_refused if {
	d := exchange.decision
		with input.client as "JP/GOV/132098/tax"
		with input.service as "JP/GOV/132098/resident-registry/address"
		with input.purpose as "tax-assessment"
		with input.now as "2026-11-23T11:40:00+00:00"
		with input.represented_party as {"class": "FRIEND", "code": "mdt-1"}
	d.allow == false
	d.reasons == ["representation of kind FRIEND is not recognised"]
}
