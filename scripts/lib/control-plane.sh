# Sourced by scripts/test and scripts/bench: start_control_plane starts the real control plane
# (scripts/test-cluster: etcd, kube-apiserver with the project's RBAC and admission policies,
# controllers, KWOK) in the background unless TEST_KUBECONFIG names one already, waits until
# it is ready and exports TEST_KUBECONFIG. It is stopped, and its store removed, on exit.
start_control_plane() {
  [ -z "${TEST_KUBECONFIG:-}" ] || return 0
  control_plane_dir=$(mktemp -d -t mesh-remediation-cluster.XXXXXX)
  scripts/test-cluster --dir "$control_plane_dir" >"$control_plane_dir/ready.json" \
    2>"$control_plane_dir/harness.log" &
  control_plane_pid=$!
  trap 'kill "$control_plane_pid" 2>/dev/null; wait "$control_plane_pid" 2>/dev/null; rm -rf "$control_plane_dir/etcd-data"' EXIT
  until [ -s "$control_plane_dir/ready.json" ]; do
    if ! kill -0 "$control_plane_pid" 2>/dev/null; then
      echo "the control plane did not start:" >&2
      cat "$control_plane_dir/harness.log" >&2
      tail -n 20 "$control_plane_dir"/*.log >&2 || true
      exit 1
    fi
    sleep 0.5
  done
  export TEST_KUBECONFIG="$control_plane_dir/admin.kubeconfig"
  echo "control plane ready: $(cat "$control_plane_dir/ready.json")" >&2
}
