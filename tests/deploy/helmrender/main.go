// helmrender: `helm template` for tests/deploy, without a helm binary (see render.go).
//
//	helmrender -chart helm/ttt-serve [-f values.yaml]... [-release NAME] [-namespace NS]
//	           [-kube-version v1.29.0] [-api-versions monitoring.coreos.com/v1] [-notes]
package main

import (
	"flag"
	"fmt"
	"os"
	"strings"
)

type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

func main() {
	var files, apis listFlag
	chart := flag.String("chart", "helm/ttt-serve", "chart directory")
	release := flag.String("release", "ttt", "release name")
	ns := flag.String("namespace", "default", "release namespace")
	kube := flag.String("kube-version", "v1.29.0", "Kubernetes version for .Capabilities")
	notes := flag.Bool("notes", false, "print NOTES.txt instead of the manifests")
	flag.Var(&files, "f", "values file (repeatable)")
	flag.Var(&apis, "api-versions", "extra API version for .Capabilities.APIVersions (repeatable)")
	flag.Parse()
	r, err := Render(*chart, Options{ValuesFiles: files, ReleaseName: *release, Namespace: *ns,
		KubeVersion: *kube, APIVersions: apis})
	if err != nil {
		fmt.Fprintln(os.Stderr, "Error:", err)
		os.Exit(1)
	}
	if *notes {
		fmt.Print(r.Notes)
		return
	}
	fmt.Print(r.Stream())
}
