-- Placeholder for 007_vms.sql of the VM work (issue: VMs from the vDC), which is
-- merged separately: tern needs consecutive numbers and 008_agent_ca.sql follows it.
-- On merge, the VM branch's 007_vms.sql replaces this file.
SELECT 1;
