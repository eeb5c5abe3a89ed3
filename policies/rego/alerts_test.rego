# METADATA
# title: unit tests of onceonly.alerts
# description: |
#   One test per rule that it fires, and one that it does not fire for a consented read. Run by
#   tests/policies/test_rego_unit.py on the real OPA evaluator, like exchange_test.rego.
package onceonly.alerts_test

import data.onceonly.alerts

node := "JP/GOV/132098"

fresh := {"recipient_seen": false, "reads_before_in_window": 0, "window_start": "2026-12-02T09:00:00Z"}

known := {"recipient_seen": true, "reads_before_in_window": 0, "window_start": "2026-12-02T09:00:00Z"}

busy := {"recipient_seen": true, "reads_before_in_window": 20, "window_start": "2026-12-02T09:00:00Z"}

private_read := {
	"kind": "response",
	"decision": "allow",
	"client": "JP/COM/5555555/tama-gas",
	"service": "JP/GOV/132098/resident-registry/address/v1",
	"basis": "statute:gas-safety-act/art12",
	"request_hash": "h-1",
	"subject": "present",
}

consented_read := object.union(private_read, {"consent_id": "c-1", "basis": "consent:c-1"})

public_read := object.union(private_read, {"client": "JP/GOV/132098/municipal-tax"})

refusal := object.union(private_read, {"kind": "refusal", "decision": "deny", "basis": null})

rules_of(entry, history) := {a.rule | some a in e.alerts} if {
	e := alerts.evaluation with input as {"node": node, "index": 7, "entry": entry, "history": history}
}

test_private_read_without_consent_fires if {
	rules_of(private_read, known) == {"read-without-consent"}
}

test_new_recipient_fires_once_keyed_by_the_recipient if {
	e := alerts.evaluation with input as {"node": node, "index": 7, "entry": public_read, "history": fresh}
	e.alerts == {{"rule": "new-recipient", "dedup": "JP/GOV/132098/municipal-tax"}}
}

test_unusual_volume_fires_above_the_limit_keyed_by_the_window if {
	e := alerts.evaluation with input as {"node": node, "index": 7, "entry": public_read, "history": busy}
	e.alerts == {{"rule": "unusual-volume", "dedup": "2026-12-02T09:00:00Z"}}
}

test_volume_limit_comes_from_the_data if {
	e := alerts.evaluation with input as {"node": node, "index": 7, "entry": public_read, "history": known}
		with data.alerts.max_reads_per_window as 0
	e.alerts == {{"rule": "unusual-volume", "dedup": "2026-12-02T09:00:00Z"}}
}

test_refusal_fires_keyed_by_the_exchange if {
	e := alerts.evaluation with input as {"node": node, "index": 7, "entry": refusal, "history": known}
	e.alerts == {{"rule": "refused", "dedup": "h-1"}}
	e.read == false
}

test_no_rule_fires_for_a_consented_read if {
	count(rules_of(consented_read, fresh)) == 0
	count(rules_of(consented_read, busy)) == 0
	e := alerts.evaluation with input as {"node": node, "index": 7, "entry": consented_read, "history": fresh}
	e.read == true
	e.consented == true
}

test_a_restricted_entry_raises_nothing if {
	hidden := object.union(private_read, {"restricted_until": "2027-01-01T00:00:00.000000Z"})
	count(rules_of(hidden, fresh)) == 0
}

test_a_consumers_record_of_another_nodes_service_is_not_a_read if {
	theirs := object.union(private_read, {"service": "JP/GOV/131130/permits/v1"})
	count(rules_of(theirs, fresh)) == 0
}

test_no_subject_no_alert if {
	anonymous := object.remove(refusal, ["subject"])
	count(rules_of(anonymous, fresh)) == 0
}

# asked_about_decisions is a promise: an entry with a decision outside it is no read and raises
# nothing, whatever else it says (even a response of this node's own service with a subject).
test_entries_of_decisions_not_asked_about_raise_nothing_and_are_no_reads if {
	every decision in {"allow", "deny", "info", "error", ""} {
		entry_of_decision_is_inert(decision)
	}
	count(alerts.asked_about_decisions) < 5
}

# asked_about_own_services_only is a promise too: an entry of those decisions naming another
# node's service (or none) is no read and raises nothing, whatever else it says.
test_entries_about_other_nodes_services_raise_nothing_where_the_rules_say_so if {
	every decision in alerts.asked_about_own_services_only {
		every service in ["JP/COM/5555555/tama-gas/usage/v1", "", null, concat("", [node, "x/a/v1"])] {
			every history in [fresh, busy] {
				every shape in [private_read, refusal, object.union(private_read, {"kind": "request"})] {
					e := alerts.evaluation with input as {
						"node": node, "index": 7,
						"entry": object.union(shape, {"decision": decision, "service": service}),
						"history": history,
					}
					e.read == false
					e.alerts == set()
				}
			}
		}
	}
	"deny" in alerts.asked_about_decisions
	not "deny" in alerts.asked_about_own_services_only
}

entry_of_decision_is_inert(decision) if decision in alerts.asked_about_decisions

entry_of_decision_is_inert(decision) if {
	not decision in alerts.asked_about_decisions
	every history in [fresh, busy] {
		every shape in [private_read, refusal, object.union(private_read, {"kind": "request"})] {
			e := alerts.evaluation with input as {
				"node": node, "index": 7,
				"entry": object.union(shape, {"decision": decision}), "history": history,
			}
			e.read == false
			e.alerts == set()
		}
	}
}
