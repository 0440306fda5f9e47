"""The local demo (scripts/demo): the whole flow on real components, printed.

Synthetic Istio metrics go bad -> Prometheus fires the project's rules -> Alertmanager
publishes with the project's template to SNS (moto) -> each function's release bootstrap
runs under the Lambda Runtime Interface Emulator against a real Kubernetes control plane
(scripts/test-cluster) holding the demo mesh, each function with its own group's token. Prints the mesh before and after, every alert's outcome, and where the time went.
Then the metrics recover and the resolved alerts are handled the same way.
"""

import sys
import time

import e2e


def show_invocations(flow, start_index):
    for inv in flow.invocations[start_index:]:
        for o in inv.response.get("outcomes", []):
            detail = o.get("change") or o.get("reason") or ""
            print(f"  {inv.function:<17} {o.get('status', ''):<8} {o.get('outcome', '?'):<9} {o.get('target', '-')}")
            if detail:
                print(f"  {'':<17} {'':<8} {'':<9} {detail[:150]}")
        if "errorMessage" in inv.response:
            print(f"  {inv.function:<17} function error: {inv.response['errorMessage'][:150]}")
    return len(flow.invocations)


def show_verdicts(flow):
    """Did it help? The changes' effects arrive, each function judges its verify request."""
    print("\n== Did it help? checkout-v2 fast again, orders' database calls succeed, frontend still "
          "failing 10 %, checkout-v1 failing half its requests now that it takes all the traffic ==")
    flow.metrics.override(e2e.AFTER_THE_CHANGES)
    e2e.wait_for_the_changes_to_show(flow)
    for function in flow.functions:
        for _event, response in flow.deliver_verifications(function):
            for o in response.get("outcomes", []):
                print(f"  {function:<17} {o.get('outcome', '?'):<9} {o.get('target', '-')}")
                print(f"  {'':<17} {(o.get('reason') or '')[:160]}")
                for e in (o.get("verification") or {}).get("evidence", []):
                    print(f"  {'':<17}   {e['check']:<24} before {e['before']:.4g}  now {e['now']:.4g}  threshold {e['threshold']:.4g}")
    print("\n== Mesh after the verdicts ==")
    print("\n".join(e2e.mesh_view(flow)))
    # The rest of the story is recovery: the stable version serves well again.
    flow.metrics.override(e2e.serving_rates("checkout", "checkout-v1", "v1", 20.0, 0.0, True))


def main() -> int:
    dry_run = "--dry-run" in sys.argv
    functions = [f for f in e2e.FUNCTIONS if (e2e.REPO / "functions" / f).exists()]
    print(f"Starting Prometheus, Alertmanager, SNS emulator, {len(functions)} functions (DRY_RUN={str(dry_run).lower()}) "
          "and a real Kubernetes control plane (built once: minutes on a cold machine) ...")
    verify = not dry_run and functions == e2e.FUNCTIONS
    flow = e2e.Flow(dry_run=dry_run, functions=functions, verify=verify,
                    function_env=e2e.verification_env() if verify else {}).start()
    try:
        if verify:
            flow.metrics.override(e2e.FRONTEND_ERRORING)
        print("\n== Mesh before ==")
        print("\n".join(e2e.mesh_view(flow)))
        print("\n== Incident: checkout-v2 slow and failing, orders' database timing out, us-east-1 unreachable ==")
        flow.metrics.set_bad(True)
        wanted = "dry-run" if dry_run else "applied"
        done = lambda: all(any(o.get("outcome") == wanted for _, o in flow.outcomes(f)) for f in functions)  # noqa: E731
        flow.wait_until(done, 180, "every function to act")
        time.sleep(6)  # let Alertmanager repeat once: at-least-once delivery, one action
        fired = e2e.fired_times(flow)
        seen = show_invocations(flow, 0)
        print("\n== Where the time went (alert firing -> SNS publish -> function invoked -> done) ==")
        print("\n".join(e2e.timing_view(flow, fired)))
        print("\n== Mesh after ==")
        print("\n".join(e2e.mesh_view(flow)))
        if verify:
            show_verdicts(flow)
            seen = len(flow.invocations)
        print("\n== Recovery: metrics back to normal, alerts resolve ==")
        flow.metrics.set_bad(False)
        resolved = lambda: all(any(o.get("status") == "resolved" for _, o in flow.outcomes(f)) for f in functions)  # noqa: E731
        flow.wait_until(resolved, 180, "resolved notifications")
        show_invocations(flow, seen)
        print("\n== Mesh after recovery ==")
        print("\n".join(e2e.mesh_view(flow)))
        reports = flow.reports()
        print(f"\n{len(reports)} reports published to the notification topic "
              f"({', '.join(sorted({r['attributes']['outcome']['Value'] for r in reports}))}).")
    finally:
        flow.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
