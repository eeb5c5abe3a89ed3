# METADATA
# title: onceonly citizen alerts
# description: |
#   Which alerts one audit entry raises for its citizen (docs/alerts.md). The node's alert worker
#   evaluates its log's new entries after they are committed (never on the exchange path), with the
#   entry's record and the worker's history of that citizen at this node; it stores each alert once
#   per (rule, citizen, dedup).
#   One entry: `evaluation`, input {"node": <member>, "index": <entry index>,
#     "entry": <the entry's record>, "history": {"recipient_seen": bool,
#     "reads_before_in_window": int, "window_start": <RFC 3339>}}.
#   A batch (what the worker asks, two calls per batch, same rules entry by entry):
#     `facts`, input {"node", "entries": [{"index", "entry"}, ...]}: per entry whether it is a
#       read and whether it was consented (what the worker's history needs, history-free);
#     `evaluations`, input {"node", "entries": [{"index", "entry", "history"}, ...]}: per entry
#       the `evaluation` of {"node", "index", "entry", "history"}.
#   Data (data.alerts, optional): {"max_reads_per_window": int, "window_s": int,
#   "public_member_classes": [<member classes whose reads are public-sector reads>]}.
#   No rule reads the subject itself: only whether there is one.
package onceonly.alerts

# --- the evaluation documents ---------------------------------------------------------------

evaluation := evaluation_of(input.node, input)

facts := [facts_of(input.node, x.entry) | some x in input.entries]

evaluations := [evaluation_of(input.node, x) | some x in input.entries]

# What the worker's history needs of an entry, whatever the history: whether it is a read, was
# consented, and what it is to the rules (`concern`, null: no rule can fire for it).
facts_of(node, entry) := {
	"read": read_flag(node, entry),
	"consented": consented_flag(entry),
	"concern": concern_of(node, entry),
}

# x: {"index", "entry", "history"} of one entry at the node `node`.
evaluation_of(node, x) := {
	"read": read_flag(node, x.entry),
	"consented": consented_flag(x.entry),
	"alerts": {a | c := concern(node, x.entry); some rule in rules; a := alert(rule, c, x)},
}

rules := ["read-without-consent", "new-recipient", "unusual-volume", "refused"]

# --- configuration (policy data, with defaults) ---------------------------------------------

default max_reads_per_window := 20

max_reads_per_window := data.alerts.max_reads_per_window

default public_member_classes := ["GOV"]

public_member_classes := data.alerts.public_member_classes

# --- facts about the entry --------------------------------------------------------------------

has_subject(entry) if {
	is_string(entry.subject)
	entry.subject != ""
}

# An entry kept from its citizen's view (a restricted statute) raises nothing: no tip-off.
restricted(entry) if entry.restricted_until

# A read of the citizen's data: the provider's record of an answered request for a service this
# node provides (a consumer's own record of the answer names another node's service).
is_read(node, entry) if {
	entry.kind == "response"
	entry.decision == "allow"
	has_subject(entry)
	not restricted(entry)
	is_string(entry.service)
	startswith(entry.service, concat("", [node, "/"]))
}

read_flag(node, entry) := true if is_read(node, entry) else := false

# The citizen consented to this exchange: it names their consent, or the policy decided on it.
is_consented(entry) if {
	is_string(entry.consent_id)
	entry.consent_id != ""
}

is_consented(entry) if {
	is_string(entry.basis)
	startswith(entry.basis, "consent:")
}

consented_flag(entry) := true if is_consented(entry) else := false

private_recipient(entry) if {
	is_string(entry.client)
	member_class := split(entry.client, "/")[1]
	not member_class in public_member_classes
}

# One exchange is one alert, even where its steps are recorded twice at one node.
exchange_key(x) := x.entry.request_hash if is_string(x.entry.request_hash) else := sprintf("entry:%d", [x.index])

# --- the rules --------------------------------------------------------------------------------

# What an entry is to the rules: a read not consented to, or a refusal on the citizen's data. Each
# rule fires for one concern only; for any other entry none fires, whatever the history.
concern(node, entry) := "read" if {
	is_read(node, entry)
	not is_consented(entry)
}

concern(_, entry) := "refusal" if {
	entry.decision == "deny"
	has_subject(entry)
	not restricted(entry)
}

concern_of(node, entry) := c if c := concern(node, entry)
else := null

# alert(rule, concern, x): the alert `rule` raises for an entry of that concern.

# (a) A private recipient read the citizen's data on a basis they did not consent to.
alert("read-without-consent", "read", x) := {"rule": "read-without-consent", "dedup": exchange_key(x)} if {
	private_recipient(x.entry)
}

# (b) A recipient never seen before for this citizen at this node (consented reads excepted).
alert("new-recipient", "read", x) := {"rule": "new-recipient", "dedup": x.entry.client} if {
	not x.history.recipient_seen
}

# (c) More reads than usual within one window (consented reads are not counted).
alert("unusual-volume", "read", x) := {"rule": "unusual-volume", "dedup": x.history.window_start} if {
	x.history.reads_before_in_window + 1 > max_reads_per_window
}

# (d) A consumer was refused on the citizen's data.
alert("refused", "refusal", x) := {"rule": "refused", "dedup": exchange_key(x)}
