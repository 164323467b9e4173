// Command mtls-probe is meshroot's trust check between two workload identities.
// It is our own code and uses only the Go standard library.
//
// Side A runs a TLS server on a loopback port with --a-cert/--a-key and requires
// a client certificate that chains to --a-ca. Side B connects as client with
// --b-cert/--b-key and verifies the server's chain against --b-ca. Only chain
// verification counts (host name, URI SAN and EKU are not checked), so the result
// answers "do these two workloads' certificates and trust bundles interoperate?".
//
// Prints "OK" and exits 0, or prints "FAIL client: <err>" / "FAIL server: <err>"
// with the exact handshake error (for example "x509: certificate signed by
// unknown authority") and exits 1. Exit 2 means bad input.
package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"time"
)

var (
	aCert = flag.String("a-cert", "", "side A (server) cert chain PEM")
	aKey  = flag.String("a-key", "", "side A private key PEM")
	aCA   = flag.String("a-ca", "", "side A trust bundle PEM (verifies B's client cert)")
	bCert = flag.String("b-cert", "", "side B (client) cert chain PEM")
	bKey  = flag.String("b-key", "", "side B private key PEM")
	bCA   = flag.String("b-ca", "", "side B trust bundle PEM (verifies A's server cert)")
	tls13 = flag.Bool("tls13-only", false, "restrict to TLS 1.3 (ztunnel default); otherwise TLS 1.2+")
	wait  = flag.Duration("timeout", 10*time.Second, "handshake timeout")
)

func pool(path string) (*x509.CertPool, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	p := x509.NewCertPool()
	if !p.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("%s: no PEM certificates", path)
	}
	return p, nil
}

// verifyChainOnly verifies the presented chain against roots, ignoring names and EKU.
func verifyChainOnly(roots *x509.CertPool) func([][]byte, [][]*x509.Certificate) error {
	return func(raw [][]byte, _ [][]*x509.Certificate) error {
		if len(raw) == 0 {
			return errors.New("peer presented no certificate")
		}
		certs := make([]*x509.Certificate, 0, len(raw))
		for _, r := range raw {
			c, err := x509.ParseCertificate(r)
			if err != nil {
				return err
			}
			certs = append(certs, c)
		}
		inter := x509.NewCertPool()
		for _, c := range certs[1:] {
			inter.AddCert(c)
		}
		_, err := certs[0].Verify(x509.VerifyOptions{
			Roots:         roots,
			Intermediates: inter,
			KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
		})
		return err
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(2)
	}
	return v
}

func main() {
	flag.Parse()
	for n, v := range map[string]string{"a-cert": *aCert, "a-key": *aKey, "a-ca": *aCA, "b-cert": *bCert, "b-key": *bKey, "b-ca": *bCA} {
		if v == "" {
			fmt.Fprintf(os.Stderr, "--%s is required\n", n)
			os.Exit(2)
		}
	}
	aPair := must(tls.LoadX509KeyPair(*aCert, *aKey))
	bPair := must(tls.LoadX509KeyPair(*bCert, *bKey))
	aRoots := must(pool(*aCA))
	bRoots := must(pool(*bCA))
	minV := uint16(tls.VersionTLS12)
	if *tls13 {
		minV = tls.VersionTLS13
	}

	serverCfg := &tls.Config{
		Certificates: []tls.Certificate{aPair},
		// RequireAnyClientCert + our own verification: chain only, no EKU/name checks.
		ClientAuth:            tls.RequireAnyClientCert,
		VerifyPeerCertificate: verifyChainOnly(aRoots),
		MinVersion:            minV,
		NextProtos:            []string{"h2"},
	}
	clientCfg := &tls.Config{
		Certificates:          []tls.Certificate{bPair},
		InsecureSkipVerify:    true, // replaced by verifyChainOnly below (names ignored on purpose)
		VerifyPeerCertificate: verifyChainOnly(bRoots),
		MinVersion:            minV,
		NextProtos:            []string{"h2"},
	}

	ln := must(net.Listen("tcp", "127.0.0.1:0"))
	defer ln.Close()
	serverErr := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			serverErr <- err
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(*wait))
		tc := tls.Server(c, serverCfg)
		err = tc.Handshake()
		if err == nil {
			// TLS 1.3: the client's cert is checked after the client thinks it is done;
			// exchange one byte each way so both sides see the final verdict.
			buf := make([]byte, 1)
			if _, err = tc.Read(buf); err == nil {
				_, err = tc.Write(buf)
			}
		}
		serverErr <- err
	}()

	conn, err := net.DialTimeout("tcp", ln.Addr().String(), *wait)
	if err != nil {
		fmt.Println("FAIL client:", err)
		os.Exit(1)
	}
	_ = conn.SetDeadline(time.Now().Add(*wait))
	tc := tls.Client(conn, clientCfg)
	cErr := tc.Handshake()
	if cErr == nil {
		buf := []byte{'x'}
		if _, cErr = tc.Write(buf); cErr == nil {
			_, cErr = tc.Read(buf)
		}
	}
	tc.Close()
	sErr := <-serverErr

	switch {
	case cErr == nil && sErr == nil:
		st := tc.ConnectionState()
		fmt.Printf("OK (%s, %s)\n", tls.VersionName(st.Version), tls.CipherSuiteName(st.CipherSuite))
	default:
		// Report the side that rejected first: a verification error beats the peer's
		// resulting "bad certificate" alert.
		if sErr != nil {
			fmt.Println("FAIL server:", sErr)
		}
		if cErr != nil {
			fmt.Println("FAIL client:", cErr)
		}
		os.Exit(1)
	}
}
