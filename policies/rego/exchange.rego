# METADATA
# title: onceonly exchange decision
# description: |
#   Who may read what, for which purpose and on which legal basis (DESIGN "One exchange", step 3).
#   The node asks for `data.onceonly.exchange.decision` on every exchange and hands back only the
#   `fields` it names. Everything not explicitly allowed below is refused (deny by default).
#   Input and data documents: docs/policies.md.
package onceonly.exchange

# --- the decision document ------------------------------------------------------------------

decision := {
	"allow": allow,
	"fields": sort(decided_fields),
	"basis": decided_basis,
	"reasons": decided_reasons,
}

# Deny by default: allow only when every rule below holds.
default allow := false

allow if {
	service_known
	access_right_valid
	purpose_declared
	operation_offered
	legal_basis
	representation_ok
	count(allowed_fields) > 0
}

decided_fields := allowed_fields if allow else := set()

decided_basis := legal_basis.basis if allow else := null

decided_reasons := [] if allow else := sort(refusals) if count(refusals) > 0 else := ["denied by default: no rule allowed this exchange"]

# --- time (time-of-validity) ------------------------------------------------------------------

# `input.now` is RFC 3339 with a zone; an exchange without a valid time is refused.
now_ns := rfc3339_ns(input.now)

# rego-cpp (the embedded engine) rejects the "Z" zone designator that OPA accepts, so "Z" is
# rewritten to the equivalent "+00:00" before parsing: both engines then read the same instant.
rfc3339_ns(text) := time.parse_rfc3339_ns(concat("", [trim_suffix(text, "Z"), "+00:00"])) if {
	endswith(text, "Z")
} else := time.parse_rfc3339_ns(text)

# A validity window is half-open, [not_before, not_after); a missing bound is open on that side
# (`window.not_before` undefined: `not_yet` is undefined, so `not not_yet` holds). One body per
# function: every decision evaluates these for the access right and each candidate statute.
in_force(window) if {
	not not_yet(window)
	not expired(window)
}

not_yet(window) if now_ns < rfc3339_ns(window.not_before)

expired(window) if now_ns >= rfc3339_ns(window.not_after)

# --- the client, by parts of its id INSTANCE/CLASS/MEMBER/SUBSYSTEM -------------------------

client_parts := split(input.client, "/")

client_member_class := client_parts[1]

client_member := concat("/", array.slice(client_parts, 0, 3))

# --- service --------------------------------------------------------------------------------

# Policy data is grouped by the provider member (INSTANCE/CLASS/MEMBER) of the service, then keyed
# by service id: a keyed lookup costs time linear in the number of keys at its level in
# rego-cpp, so no level may grow with the whole federation (docs/policies.md, "Performance").
provider_member := concat("/", array.slice(split(input.service, "/"), 0, 3))

service := data.registry.services[provider_member][input.service]

service_known if service

service_fields := {f | some f in service.fields}

# --- access right (from the central registry, keyed service -> client) -----------------------

access_right := data.registry.access_rights[provider_member][input.service][input.client]

access_right_valid if in_force(access_right)

# --- purpose binding: a service may be called only for a purpose it declares ----------------

purpose_declared if input.purpose in service.purposes

# --- operation: reading is the default; a change needs a service that accepts changes -------

default operation := "read"

operation := input.operation

operation_offered if operation == "read"

operation_offered if {
	operation == "change"
	service.changes == true
}

# --- legal basis: a statute in force, else the consent gate's answer ------------------------

statute_names_client(statute) if input.client in object.get(statute, "clients", [])

statute_names_client(statute) if client_member_class in object.get(statute, "client_classes", [])

statute_names_client(statute) if client_member in object.get(statute, "client_members", [])

# A statute applies when it names the client, the purpose and the operation, and is in force.
statute_applies(statute) if {
	statute_names_client(statute)
	input.purpose in statute.purposes
	operation in object.get(statute, "operations", ["read"])
	in_force(statute)
}

# `data.registry.statutes[provider][service]` is sorted by ordinance (policies/data.py), so the first is stable.
# Looked up by key, never `object.get(data.registry.statutes, …)`: a whole data subtree passed to a
# function is copied into the evaluation on every decision (hundreds of µs at 1,000 services).
default service_statutes := []

service_statutes := data.registry.statutes[provider_member][input.service]

applicable_statutes := [statute |
	some statute in service_statutes
	statute_applies(statute)
]

consent_valid if {
	input.consent.allow == true
	is_string(input.consent.consent_id)
}

legal_basis := {
	"basis": sprintf("statute:%s", [applicable_statutes[0].ordinance]),
	"fields": {f | some f in applicable_statutes[0].fields},
} if {
	count(applicable_statutes) > 0
} else := {
	"basis": sprintf("consent:%s", [input.consent.consent_id]),
	"fields": {f | some f in input.consent.fields},
} if {
	consent_valid
}

# --- representation: a call made for someone (the signed X-Road-Represented-Party) ----------

# `input.represented_party` is null, or {"class": kind, "code": mandate id}: the consumer's node
# signed it; the consent service checked the mandate before the call (docs/consent.md, Mandates).
represented_party := object.get(input, "represented_party", null)

representation_kinds := {"PARENT", "GUARDIAN", "AUTHORISED"}

representation_ok if represented_party == null

representation_ok if represented_party.class in representation_kinds

# --- data minimisation: requested ∩ offered by the service ∩ allowed by the basis -----------

requested_fields := {f | some f in input.requested_fields} if {
	is_array(input.requested_fields)
} else := service_fields

allowed_fields := (requested_fields & service_fields) & legal_basis.fields

# --- reasons for a refusal, for people ------------------------------------------------------

refusals contains "invalid input: `now` must be an RFC 3339 time with a zone" if not now_ns

refusals contains sprintf("unknown service: %s", [input.service]) if not service_known

refusals contains sprintf("no access right: %s may not call %s", [input.client, input.service]) if {
	service_known
	not access_right
}

refusals contains sprintf("access right of %s to %s is not in force at %s", [input.client, input.service, input.now]) if {
	access_right
	not in_force(access_right)
}

refusals contains sprintf("purpose %s is not declared by service %s", [input.purpose, input.service]) if {
	service_known
	not purpose_declared
}

refusals contains sprintf("operation %s is not offered by service %s", [operation, input.service]) if {
	service_known
	not operation_offered
}

refusals contains sprintf("no legal basis: no statute in force covers %s for purpose %s, and no valid consent was given", [input.client, input.purpose]) if {
	service_known
	not legal_basis
}

refusals contains sprintf("consent %s does not cover this exchange", [input.consent.consent_id]) if {
	input.consent.allow == false
	not legal_basis
}

refusals contains sprintf("statute %s names this exchange but is not in force at %s", [statute.ordinance, input.now]) if {
	some statute in service_statutes
	statute_names_client(statute)
	input.purpose in statute.purposes
	not in_force(statute)
	not legal_basis
}

refusals contains sprintf("representation of kind %s is not recognised", [represented_party.class]) if {
	represented_party != null
	not representation_ok
}

refusals contains "data minimisation: none of the requested fields is allowed on this basis" if {
	legal_basis
	service_known
	count(allowed_fields) == 0
}
