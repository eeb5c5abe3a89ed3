# METADATA
# title: onceonly citizen alerts
# description: |
#   Which alerts one audit entry raises for its citizen (docs/alerts.md). The node's alert worker
#   asks for `data.onceonly.alerts.evaluation` once per new entry of its log, after the entry is
#   committed (never on the exchange path), with the entry's record and the worker's history of
#   that citizen at this node; it stores each alert once per (rule, citizen, dedup).
#   Input: {"node": <member>, "index": <entry index>, "entry": <the entry's record>,
#           "history": {"recipient_seen": bool, "reads_before_in_window": int,
#                       "window_start": <RFC 3339>}}
#   Data (data.alerts, optional): {"max_reads_per_window": int, "window_s": int,
#   "public_member_classes": [<member classes whose reads are public-sector reads>]}.
#   No rule reads the subject itself: only whether there is one.
package onceonly.alerts

# --- the evaluation document ----------------------------------------------------------------

evaluation := {
	"read": is_read,
	"consented": is_consented,
	"alerts": alerts,
}

# --- configuration (policy data, with defaults) ---------------------------------------------

default max_reads_per_window := 20

max_reads_per_window := data.alerts.max_reads_per_window

default public_member_classes := ["GOV"]

public_member_classes := data.alerts.public_member_classes

# --- facts about the entry --------------------------------------------------------------------

has_subject if {
	is_string(input.entry.subject)
	input.entry.subject != ""
}

# An entry kept from its citizen's view (a restricted statute) raises nothing: no tip-off.
restricted if input.entry.restricted_until

# A read of the citizen's data: the provider's record of an answered request for a service this
# node provides (a consumer's own record of the answer names another node's service).
default is_read := false

is_read if {
	input.entry.kind == "response"
	input.entry.decision == "allow"
	has_subject
	not restricted
	is_string(input.entry.service)
	startswith(input.entry.service, concat("", [input.node, "/"]))
}

# The citizen consented to this exchange: it names their consent, or the policy decided on it.
default is_consented := false

is_consented if {
	is_string(input.entry.consent_id)
	input.entry.consent_id != ""
}

is_consented if {
	is_string(input.entry.basis)
	startswith(input.entry.basis, "consent:")
}

private_recipient if {
	is_string(input.entry.client)
	member_class := split(input.entry.client, "/")[1]
	not member_class in public_member_classes
}

# One exchange is one alert, even where its steps are recorded twice at one node.
exchange_key := input.entry.request_hash if is_string(input.entry.request_hash) else := sprintf("entry:%d", [input.index])

# --- which entries the worker asks about ----------------------------------------------------

# Every rule below needs a read (decision "allow") or a refusal (decision "deny"), and only reads
# count towards the volume: an entry with another decision (a consumer's record of its own
# request, "info"; an exchange that failed, "error") raises nothing and counts for nothing. The
# worker reads this set once and does not ask about the other entries (alerts_test.rego checks
# the claim for each decision an entry can have).
asked_about_decisions := {"allow", "deny"}

# An "allow" entry matters only as a read, and a read is the provider's record: an "allow" entry
# naming a service this node does not provide (a consumer's record of the answer it received) is
# no read and raises nothing. The worker does not ask about those either (alerts_test.rego checks
# the claim).
asked_about_own_services_only := {"allow"}

# --- the rules --------------------------------------------------------------------------------

# (a) A private recipient read the citizen's data on a basis they did not consent to.
alerts contains {"rule": "read-without-consent", "dedup": exchange_key} if {
	is_read
	not is_consented
	private_recipient
}

# (b) A recipient never seen before for this citizen at this node (consented reads excepted).
alerts contains {"rule": "new-recipient", "dedup": input.entry.client} if {
	is_read
	not is_consented
	not input.history.recipient_seen
}

# (c) More reads than usual within one window (consented reads are not counted).
alerts contains {"rule": "unusual-volume", "dedup": input.history.window_start} if {
	is_read
	not is_consented
	input.history.reads_before_in_window + 1 > max_reads_per_window
}

# (d) A consumer was refused on the citizen's data.
alerts contains {"rule": "refused", "dedup": exchange_key} if {
	input.entry.decision == "deny"
	has_subject
	not restricted
}
