package hotswap

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"
)

func notifyListener(t *testing.T, name string) *net.UnixConn {
	t.Helper()
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func readDatagram(t *testing.T, c *net.UnixConn) string {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 4096)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	return string(buf[:n])
}

func TestNotifyReachesPathAndAbstractSockets(t *testing.T) {
	// sd_notify datagrams reach a socket by path and one by abstract name ("@...").
	for _, name := range []string{filepath.Join(t.TempDir(), "notify"), fmt.Sprintf("@hotswap-test-%d", os.Getpid())} {
		c := notifyListener(t, name)
		if err := sdNotify(name, "READY=1\nSTATUS=up"); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if got := readDatagram(t, c); got != "READY=1\nSTATUS=up" {
			t.Fatalf("%s: got %q", name, got)
		}
	}
	if err := sdNotify(filepath.Join(t.TempDir(), "absent"), "READY=1"); err == nil {
		t.Fatal("notifying a socket that does not exist did not fail")
	}
}

func TestReadyUnsetsNotifySocketAndLaterNotifiesStillArrive(t *testing.T) {
	// Ready sends READY=1, unsets NOTIFY_SOCKET for children, and a later Notify still reaches the supervisor.
	c := notifyListener(t, filepath.Join(t.TempDir(), "notify"))
	cmd, out := child(t, "notify", []string{"NOTIFY_SOCKET=" + c.LocalAddr().String()})
	got := lines(t, out, "status:")
	if want := []string{"ready: <nil>", "status: <nil>"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("the child printed %q, want %q", got, want)
	}
	cmd.Wait()
	for _, want := range []string{"READY=1", "STATUS=after the variable is gone"} {
		if got := readDatagram(t, c); got != want {
			t.Fatalf("got %q, want %q", got, want)
		}
	}
}

func TestReadyWithoutNotifySocketDoesNothing(t *testing.T) {
	// Without NOTIFY_SOCKET (run on its own) Ready and Notify succeed and send nothing.
	cmd, out := child(t, "notify", nil)
	got := lines(t, out, "status:")
	if want := []string{"ready: <nil>", "status: <nil>"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("the child printed %q, want %q", got, want)
	}
	cmd.Wait()
}
