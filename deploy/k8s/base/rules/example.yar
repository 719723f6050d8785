// An example rule (docs/triage.md): replace this directory's files with your own rules.
// It fires on the EICAR anti-virus test string, which is harmless by design.
rule eicar_test_file : test {
    meta:
        description = "The EICAR anti-virus test file"
        reference = "https://www.eicar.org/download-anti-malware-testfile/"
    strings:
        $eicar = "EICAR-STANDARD-ANTIVIRUS-TEST-FILE"
    condition:
        $eicar
}
